"""Running: the machinery the method runs on. The one error a user sees (`errors`), data parallel and device maps
(`parallel`), run folders written atomically (`runfolder`) and the intervals every rate carries (`stats`)."""
