"""train.py end to end on tiny random Llama 3 and Qwen3 checkpoints with tokenizer.json files of their
families' structure (offline, CPU): CCC through the script, a JSONL task through train.main."""

import json

from conftest import LLAMA3_ROPE, save_checkpoint, tiny_hf_model
from test_train import ccc_rows, check_run_folder, run_script, write_task
from tokenizers import Tokenizer as HFTokenizer

import ascale
import evaluate
import train


def tiny_folder(tmp_path, model_type, tokenizer_json, **overrides):
    """A tiny random model whose vocabulary fits the tokenizer, saved with it in the Hub's layout."""
    n_vocab = HFTokenizer.from_file(str(tokenizer_json)).get_vocab_size(with_added_tokens=True)
    hf = tiny_hf_model(model_type, vocab_size=n_vocab + 7, **overrides)  # the real ones have spare rows too
    folder = save_checkpoint(hf, tmp_path / model_type, legacy=True)
    (folder / "tokenizer.json").write_bytes(tokenizer_json.read_bytes())
    return str(folder)


def test_ccc_on_a_tiny_llama3(tmp_path, llama_tokenizer_files):
    model = tiny_folder(tmp_path, "llama", llama_tokenizer_files["llama3"], head_dim=16, tie_word_embeddings=True,
                        rope_parameters=LLAMA3_ROPE)
    out = tmp_path / "run"
    proc = run_script("--model", model, "--task", "ccc", "--sites", "head,attn_out,mlp_out", "--steps", "4",
                      "--out", str(out), "--show", "1")
    assert proc.returncode == 0, proc.stderr
    check_run_folder(out, "activscalar")
    meta = ascale.read_metadata(out / "intervention.safetensors")
    tokens = json.loads(meta["tokens"])
    assert tokens[0] == "<|begin_of_text|>" and tokens[1] == "The"  # the heatmap's axis starts with BOS
    assert meta["model_type"] == "llama" and meta["head_dim"] == "16"


def test_jsonl_task_on_a_tiny_qwen3(tmp_path, llama_tokenizer_files, capsys):
    model = tiny_folder(tmp_path, "qwen3", llama_tokenizer_files["qwen2"], hidden_size=48, head_dim=16)
    task = write_task(tmp_path / "caps.jsonl", ccc_rows())
    out = tmp_path / "run"
    assert train.main(["--model", model, "--task", task, "--method", "all", "--sites", "head,resid", "--steps", "4",
                       "--batch-size", "4", "--out", str(out)]) == 0
    for method in ascale.METHODS:
        check_run_folder(out / method, method)
    tokens = json.loads(ascale.read_metadata(out / "activscalar" / "intervention.safetensors")["tokens"])
    assert tokens[0] == "The"  # Qwen adds no BOS
    assert evaluate.main([str(out / "activscalar" / "intervention.safetensors")]) == 0
    assert "flip rate" in capsys.readouterr().out
