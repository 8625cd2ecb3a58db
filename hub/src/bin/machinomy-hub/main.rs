//! `machinomy-hub`: the daemon and its admin CLI.

mod cli;
mod output;
mod upload;

use std::process::ExitCode;

use clap::error::{ContextKind, ContextValue, ErrorKind};

/// Exit status of a mistake on the command line; every other failure exits 1.
const USAGE: u8 = 2;

fn main() -> ExitCode {
    let args = match cli::parse() {
        Ok(args) => args,
        // --help and --version print to stdout and exit 0; `machinomy-hub` alone prints the
        // help to stderr and exits 2.
        Err(e) if !e.use_stderr() || e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => e.exit(),
        Err(e) => {
            // One clear line, as for every other error; --help has the rest.
            eprintln!("machinomy-hub: {} (see --help)", output::clean(&usage_line(&e)));
            return ExitCode::from(USAGE);
        }
    };
    match cli::execute(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("machinomy-hub: {}", output::clean(&error_line(&e)));
            if e.downcast_ref::<cli::Usage>().is_some() { ExitCode::from(USAGE) } else { ExitCode::FAILURE }
        }
    }
}

/// The error and its causes, `a: b: c`, leaving out a cause that is already part of the
/// message (many errors quote their source).
fn error_line(error: &anyhow::Error) -> String {
    let mut line = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !line.contains(&cause) {
            line.push_str(": ");
            line.push_str(&cause);
        }
    }
    line
}

/// A clap error on one line that keeps its meaning: the lines before `Usage:`, joined.
fn usage_line(error: &clap::Error) -> String {
    if error.kind() == ErrorKind::MissingSubcommand
        && let Some(ContextValue::String(parent)) = error.get(ContextKind::InvalidSubcommand)
    {
        let path: Vec<&str> = parent.split_whitespace().skip(1).collect();
        let name = if path.is_empty() { parent.clone() } else { path.join(" ") };
        return format!("`{name}` needs a subcommand: {}", cli::subcommands_of(&path).join(", "));
    }
    join_error_lines(&error.to_string())
}

/// `error: the following required arguments were not provided:\n  <ID>\n\nUsage: …` becomes
/// `the following required arguments were not provided: <ID>`.
fn join_error_lines(rendered: &str) -> String {
    let mut line = String::new();
    let mut in_list = false;
    for part in rendered.lines().map(str::trim) {
        if part.starts_with("Usage:") || part.starts_with("For more information") {
            break;
        }
        if part.is_empty() {
            continue;
        }
        let part = part.strip_prefix("error: ").unwrap_or(part);
        let is_item = in_list && !part.starts_with("tip:");
        if !line.is_empty() {
            line.push_str(match (is_item, line.ends_with(':')) {
                (_, true) => " ",
                (true, false) => ", ",
                (false, false) => "; ",
            });
        }
        line.push_str(part);
        in_list = is_item || part.ends_with(':');
    }
    if line.is_empty() { "bad arguments".to_owned() } else { line }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_errors_keep_what_they_name_on_one_line() {
        let missing = "error: the following required arguments were not provided:\n  --period <PERIOD>\n  --limit <LIMIT>\n\nUsage: machinomy-hub budget set --period <PERIOD> <SUBJECT>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            join_error_lines(missing),
            "the following required arguments were not provided: --period <PERIOD>, --limit <LIMIT>"
        );
        let unexpected =
            "error: unexpected argument '-5' found\n\n  tip: to pass '-5' as a value, use '-- -5'\n\nUsage: x\n";
        assert_eq!(
            join_error_lines(unexpected),
            "unexpected argument '-5' found; tip: to pass '-5' as a value, use '-- -5'"
        );
    }

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory (os error 2)");
        #[derive(Debug, thiserror::Error)]
        #[error("cannot read config hub.toml: {source}")]
        struct Read {
            source: std::io::Error,
        }
        let error = anyhow::Error::new(Read { source: io }).context("loading");
        assert_eq!(error_line(&error), "loading: cannot read config hub.toml: No such file or directory (os error 2)");
    }
}
