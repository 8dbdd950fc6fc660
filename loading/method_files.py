"""
A method of one's own in a Python file: `python train.py --method path/to/mine.py` and, later, ascale.load of
its run (whose metadata names the file) import it from its path, with nothing imported first.

The file defines one subclass of ascale.Intervention with a `method` name (docs/method.md, "Adding an
intervention"); it may import ascale and the built-in methods. It is imported once per process, as a module of
its own, and its class is kept here by the file's absolute path, not in ascale.METHODS: `--method all` stays
the built-in methods, and a file's method can never stand in for a built-in one of the same name. This module
imports neither ascale nor the methods: ascale passes what it needs (ascale.method_class).
"""

import hashlib
import importlib.util
import os
import sys

from running.errors import UserError

LOADED: dict[str, type] = {}  # the class of each method file imported so far, by its absolute path


def from_file(path, base: type, tables: tuple[dict, ...], builtin: dict[str, type]) -> type:
    """The subclass of `base` with a `method` name that the Python file `path` defines, imported on first use.
    `tables` (ascale.METHODS, BASELINES) are left as they were: the class goes into LOADED instead. `builtin`:
    the methods it may not rename. Every problem is one UserError line naming the file."""
    path = os.path.abspath(path)
    if path in LOADED:
        return LOADED[path]
    for cls in builtin.values():                      # a built-in module's own file: its class, not a copy
        if os.path.abspath(getattr(sys.modules.get(cls.__module__), "__file__", "") or "") == path:
            return cls
    if not os.path.isfile(path) or not path.endswith(".py"):
        what = "does not exist" if not os.path.exists(path) else "is not a Python file (.py)"
        raise UserError(f"method file {path} {what}; pass a .py file that defines an Intervention subclass"
                        " (docs/method.md, Adding an intervention)")
    name = f"_ascale_method_{os.path.basename(path)[:-3]}_{hashlib.sha1(path.encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    before = [dict(t) for t in tables]
    sys.modules[name] = module                        # as an import would: dataclasses and pickle look here
    try:
        spec.loader.exec_module(module)
    except Exception as e:                            # its own error, as one line
        sys.modules.pop(name, None)
        if isinstance(e, UserError):
            raise UserError(f"method file {path}: {e}") from None
        where = f" (line {e.lineno})" if isinstance(e, SyntaxError) else ""
        first = (str(e).splitlines() or [""])[0]
        raise UserError(f"method file {path} fails to import{where}: {type(e).__name__}: {first}") from None
    finally:
        for table, old in zip(tables, before, strict=True):   # its classes registered themselves: undone
            table.clear()
            table.update(old)
    found = [c for c in vars(module).values() if isinstance(c, type) and issubclass(c, base)
             and c.__module__ == name and vars(c).get("method")]
    if len(found) != 1:
        what = "no subclass of Intervention with a `method` name" if not found else \
            f"{len(found)} methods ({', '.join(c.method for c in found)}); one file holds one method"
        raise UserError(f"method file {path} defines {what}")
    cls = found[0]
    if cls.method in builtin:
        raise UserError(f"method file {path}: its method name {cls.method!r} is a built-in method's; give its"
                        " class another `method`")
    LOADED[path] = cls
    return cls


def find(name: str, file: str, base: type, tables: tuple[dict, ...], builtin: dict[str, type]) -> type:
    """ascale.method_class: the class of method `name` among `builtin`, or with `file`, that file's (from_file,
    whose `method` must then be `name` where one is given). UserError if there is none."""
    cls = from_file(file, base, tables, builtin) if file else builtin.get(name)
    if cls is None:
        raise UserError(f"unknown method {name!r}; choose {', '.join(builtin)}, or a .py file that defines one")
    if name and cls.method != name:
        raise UserError(f"method file {file} defines method {cls.method!r}, not {name!r} (was it changed?)")
    return cls


def file_of(cls: type) -> str:
    """The absolute path of the method file that defines cls ("" for every other class)."""
    return next((path for path, c in LOADED.items() if c is cls), "")
