"""Splitters turn a free-text scenario into a structured prompt (a `Story`: one global prompt and N local
prompts, SynCoS supplementary Fig. 8). One module per job: `offline` (rule based, no network), `llm` (any
OpenAI-compatible server), `auto` (llm when configured, else offline), `cache` (LLM results on disk), `scenario`
(reading a scenario file and running the configured splitter). The config group `conf/splitter/` picks one."""
