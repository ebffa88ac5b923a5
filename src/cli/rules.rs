//! `replicator rules init`: writes a starting `REPLICA_RULES` file from a dump's tables
//! (docs/masking.md). Reads the dump only; touches neither the target nor the state.
//! `replicator rules key`: prints a fresh strong `MASKING_KEY`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{CliError, exit};
use crate::config::ConfigError;

#[derive(Args, Debug)]
pub struct RulesArgs {
    #[command(subcommand)]
    pub command: RulesCommand,
}

#[derive(Subcommand, Debug)]
pub enum RulesCommand {
    /// Write a starting rules file: every column of every table with `keep`, the columns that
    /// look personal marked `# REVIEW` with a suggested rule, `strict = true`
    Init(InitArgs),
    /// Print a fresh strong MASKING_KEY (256 random bits, hex) on stdout: set it in the
    /// environment of every replicator of this replica, and keep it from the replica's readers
    Key,
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// The dump (pg_dump -Fc, e.g. the .pgsql of a Scalingo backup) whose tables are listed
    #[arg(long)]
    pub dump: Option<PathBuf>,
    /// Where to write the file (refused if it exists); default: stdout
    #[arg(long)]
    pub output: Option<PathBuf>,
}

pub async fn run(args: RulesArgs) -> Result<u8, CliError> {
    let args = match args.command {
        RulesCommand::Init(args) => args,
        RulesCommand::Key => {
            println!("{}", crate::masking::MaskingKey::generate());
            eprintln!(
                "a fresh key: set it as MASKING_KEY (e.g. `scalingo env-set MASKING_KEY=...`) where the replicator runs, keep it as you keep the database password, and do not change it (other pseudonyms every night)"
            );
            return Ok(exit::OK);
        }
    };
    let Some(dump) = args.dump else {
        return Err(ConfigError::Missing {
            var: "--dump",
            hint: "give the dump to read the tables from: the .pgsql inside a Scalingo backup's .tar.gz (`tar xzf` it), or a pg_dump -Fc file",
        }
        .into());
    };
    if let Some(out) = &args.output
        && out.exists()
    {
        return Err(CliError::Refused(format!(
            "{} exists: rules init does not overwrite a rules file; give another --output",
            out.display()
        )));
    }
    let toc = crate::dump::toc::Toc::read(&dump)
        .await
        .map_err(crate::app::fatal)?;
    let schema = crate::replica::masking::read_schema(&dump)
        .await
        .map_err(|e| crate::app::fatal(e.to_string()))?;
    let skip = crate::dump::selection::select(&toc, &Default::default()).skip;
    let tables = crate::replica::masking::restored_tables(&toc, &skip, &[]);
    let count = |kinds: &[&str]| {
        toc.entries()
            .filter(|e| kinds.contains(&e.desc.as_str()) && !skip.contains(&e.id))
            .count()
    };
    let text = crate::masking::init::starting_file(
        &schema,
        &tables,
        &dump.display().to_string(),
        count(&["COMMENT"]),
        count(&["BLOB", "BLOB METADATA", "LARGE OBJECT"]),
    );
    let review = text.matches("# REVIEW").count();
    match &args.output {
        Some(out) => {
            std::fs::write(out, &text)
                .map_err(|e| crate::app::fatal(format!("cannot write {}: {e}", out.display())))?;
            eprintln!(
                "wrote {} ({} table(s), {review} column(s) marked REVIEW): decide on those, then set REPLICA_RULES={}",
                out.display(),
                tables.len(),
                out.display()
            );
        }
        None => print!("{text}"),
    }
    Ok(exit::OK)
}
