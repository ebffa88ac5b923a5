//! The tests' fake Scalingo as a standalone server, to try the replicator by hand:
//!
//! ```sh
//! cargo run --example fake_scalingo -- backup.tar.gz          # prints the variables to export
//! ```
//!
//! It serves `backup.tar.gz` as the newest `done` backup of app `my-app` (API token
//! `tk-us-fake-0123456789abcdef`) on loopback until interrupted. Faults can be switched on
//! with environment variables: `FAKE_FAIL_FIRST=N` (the first N API calls answer 500),
//! `FAKE_BYTES_PER_SECOND=N` (slow download), `FAKE_CUT_AFTER=K` (cut the first download
//! after K bytes), `FAKE_NO_RANGE=1` (ignore `Range`).

#[path = "../tests/it/common/fake_scalingo.rs"]
mod fake_scalingo;

use fake_scalingo::{API_TOKEN, APP, ErrorFault, FakeConfig, FakeScalingo, Times};

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn main() {
    let archive = std::env::args()
        .nth(1)
        .expect("usage: fake_scalingo ARCHIVE.tar.gz");
    let fake = FakeScalingo::start(FakeConfig::new(std::path::PathBuf::from(archive)));
    fake.faults(|f| {
        if let Some(n) = env_u64("FAKE_FAIL_FIRST") {
            f.error = Some(ErrorFault {
                route: None,
                status: 500,
                retry_after: None,
                times: Times::Next(n as u32),
            });
        }
        f.bytes_per_second = env_u64("FAKE_BYTES_PER_SECOND");
        f.cut_after = env_u64("FAKE_CUT_AFTER").map(|k| (k, Times::Next(1)));
        f.ignore_range = std::env::var("FAKE_NO_RANGE").is_ok();
    });
    let url = fake.url();
    println!("export SCALINGO_APP={APP} SCALINGO_API_TOKEN={API_TOKEN}");
    println!("export SCALINGO_AUTH_URL={url} SCALINGO_API_URL={url} SCALINGO_DB_URL={url}");
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
