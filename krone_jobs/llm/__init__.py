"""Optional LLM stages: the budgeted client, redaction, prompts, the chunk judge and the LLM extractor.

Nothing is imported here on purpose: ``judge`` pulls in the router (and torch), and DAG files that only
need :class:`~krone_jobs.llm.client.LLMClient` must stay fast to parse. Import the modules directly.
"""
