-- The W3C trace context (traceparent, tracestate, baggage as a JSON object) of the request that
-- wrote the row, so the relay's publish span continues the request's trace.
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS trace_context TEXT;
