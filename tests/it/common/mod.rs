pub mod demo;
pub mod fake_scalingo;
pub mod pg;
pub mod scenario;
