-- What the LLM layer did for a decision: which path routed and drafted, and
-- every call (provider, attempt, outcome, latency, tokens, cost). NULL when no
-- model was asked.
ALTER TABLE decisions ADD COLUMN llm TEXT;
