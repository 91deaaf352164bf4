"""Training engines, chosen by `actor.engine`: name -> "module:builder"."""

ENGINES = {
    "automodel": "engines.automodel.engine:build_engine",
    "fsdp": "engines.fsdp.engine:build_engine",
}
