"""The record: trace context, Record/Call, store, graph glue, selection, per-sample grads, files."""
