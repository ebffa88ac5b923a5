mod common;
mod engine;
mod fetch;
mod postgres_ops;
mod scalingo_api;
