//! `--config FILE`: one TOML file for every role. Keys are the flags' long
//! names (`influx-url` or `influx_url`); a table per command (`[analyze]`,
//! `[produce]`, …) holds that command's settings, keys at the top apply to
//! every command that has the flag, and the producer's inputs are
//! `[[input]]` tables. Environment variables and flags override the file:
//! a key becomes its flag's environment variable (`LOGPIPE_<FLAG>`) unless
//! that variable is already set, before the command line is parsed. An
//! unknown table or key is an error that names it and its line.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::CommandFactory;

use crate::cli::Cli;

use toml::de::{DeTable, DeValue};

/// The line (1-based) of byte `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].matches('\n').count() + 1
}

/// A key's value as its environment variable would hold it (lists joined
/// by commas); `None` for a table, or a list holding one.
fn env_value(v: &DeValue<'_>) -> Option<String> {
    Some(match v {
        DeValue::String(s) => s.to_string(),
        DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix()).ok()?.to_string(),
        DeValue::Float(f) => f.to_string(),
        DeValue::Boolean(b) => b.to_string(),
        DeValue::Datetime(d) => d.to_string(),
        DeValue::Array(a) => a
            .iter()
            .map(|x| match x.get_ref() {
                DeValue::Table(_) | DeValue::Array(_) => None,
                x => env_value(x),
            })
            .collect::<Option<Vec<_>>>()?
            .join(","),
        DeValue::Table(_) => return None,
    })
}

/// The settings of `command` in the file `text` (named `path`): each key's
/// environment variable and value, a command's table over the top level.
/// Checks every table and key of the file, not only the command's.
pub fn settings(text: &str, path: &Path, command: &str) -> Result<Vec<(String, String)>> {
    let file = DeTable::parse(text).map_err(|e| anyhow!("--config {}: {e}", path.display()))?;
    let cli = Cli::command();
    let subcommands: Vec<&clap::Command> = cli
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "completions")
        .collect();
    let find = |sub: &clap::Command, key: &str| -> Option<clap::Arg> {
        let long = key.replace('_', "-");
        let id = key.replace('-', "_");
        // A flag by its long name; a positional argument (`paths`) by its name.
        sub.get_arguments()
            .find(|a| match a.get_long() {
                Some(l) => l == long,
                None => a.is_positional() && a.get_id() == id.as_str(),
            })
            .cloned()
    };
    let at = |s: std::ops::Range<usize>| format!("{}:{}", path.display(), line_of(text, s.start));
    // (command's own table?, variable, value)
    let mut out: Vec<(bool, String, String)> = Vec::new();
    let mut take = |sub: &clap::Command,
                    own: bool,
                    key: &str,
                    span: std::ops::Range<usize>,
                    value: &DeValue<'_>|
     -> Result<()> {
        let arg = find(sub, key).ok_or_else(|| {
            anyhow!(
                "{}: unknown key `{key}` for `logpipe {}` (its flags: logpipe {} --help)",
                at(span.clone()),
                sub.get_name(),
                sub.get_name()
            )
        })?;
        let Some(env) = arg.get_env() else {
            bail!(
                "{}: `{key}` cannot be set in the config file; give --{} on the command line",
                at(span),
                arg.get_long().unwrap_or_default()
            );
        };
        let v = env_value(value).ok_or_else(|| {
            anyhow!(
                "{}: `{key}` must be a string, number, boolean or a list of them",
                at(span.clone())
            )
        })?;
        if sub.get_name() == command {
            out.push((own, env.to_string_lossy().into_owned(), v));
        }
        Ok(())
    };
    let sub_named = |n: &str| subcommands.iter().copied().find(|s| s.get_name() == n);
    for (key, value) in file.get_ref() {
        let name = key.get_ref().as_ref();
        match value.get_ref() {
            DeValue::Table(t) => {
                let Some(sub) = sub_named(name) else {
                    let roles: Vec<&str> = subcommands.iter().map(|s| s.get_name()).collect();
                    bail!(
                        "{}: unknown table [{name}]: tables are named after commands ({})",
                        at(key.span()),
                        roles.join(", ")
                    );
                };
                for (k, v) in t {
                    take(sub, true, k.get_ref(), k.span(), v.get_ref())?;
                }
            }
            // The producer's inputs: `produce` reads them itself.
            DeValue::Array(a)
                if name == "input"
                    && a.iter().all(|x| matches!(x.get_ref(), DeValue::Table(_))) => {}
            v => {
                // A top-level key means one thing everywhere: the flags
                // whose variable is LOGPIPE_<KEY> (`topic` is not the
                // rollup's --topic, whose variable is LOGPIPE_FLEET_TOPIC).
                let var = format!("LOGPIPE_{}", name.replace('-', "_").to_uppercase());
                let with: Vec<&clap::Command> = subcommands
                    .iter()
                    .copied()
                    .filter(|s| {
                        find(s, name)
                            .is_some_and(|a| a.get_env().is_some_and(|e| e == var.as_str()))
                    })
                    .collect();
                if with.is_empty() {
                    bail!(
                        "{}: unknown key `{name}` at the top: no command has a flag --{} set by {var} (a command's own flags go in its table, e.g. [analyze])",
                        at(key.span()),
                        name.replace('_', "-")
                    );
                }
                for sub in with {
                    take(sub, false, name, key.span(), v)?;
                }
            }
        }
    }
    // The command's own table wins over the top level.
    let mut settings = BTreeMap::new();
    out.sort_by_key(|(own, _, _)| *own);
    for (_, k, v) in out {
        settings.insert(k, v);
    }
    Ok(settings.into_iter().collect())
}

/// The command and `--config` of the command line `args` (or
/// `LOGPIPE_CONFIG`), read without validating the rest.
fn command_and_file(args: &[OsString]) -> Option<(String, PathBuf)> {
    let m = Cli::command()
        .ignore_errors(true)
        .try_get_matches_from(args)
        .ok()?;
    let (name, sub) = m.subcommand()?;
    let file = sub
        .try_get_one::<PathBuf>("config")
        .ok()
        .flatten()
        .cloned()?;
    Some((name.to_string(), file))
}

/// Reads `--config` (when given) and sets the environment variables of its
/// settings that are not set already; returns the file's path and text.
pub fn apply(args: &[OsString]) -> Result<Option<(PathBuf, String)>> {
    let Some((command, path)) = command_and_file(args) else {
        return Ok(None);
    };
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("--config {}", path.display()))?;
    for (env, value) in settings(&text, &path, &command)? {
        if std::env::var_os(&env).is_none() {
            std::env::set_var(env, value);
        }
    }
    Ok(Some((path, text)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(text: &str, command: &str) -> Result<BTreeMap<String, String>> {
        Ok(settings(text, Path::new("l.toml"), command)?
            .into_iter()
            .collect())
    }

    #[test]
    fn keys_become_their_flags_variables_and_tables_win() {
        let text = "brokers = \"k1:9092\"\ntopic = \"logs\"\n\n[analyze]\ninflux-url = \"http://i:8086\"\ninflux_db = \"logs\"\nbrokers = \"k2:9092\"\nkafka = [\"session.timeout.ms=6000\", \"fetch.wait.max.ms=10\"]\nlateness = \"1m\"\n\n[produce]\npaths = [\"/var/log/a.log\", \"/var/log/b.log\"]\nfrom-beginning = true\n\n[[input]]\npaths = [\"/x\"]\n";
        let a = get(text, "analyze").unwrap();
        assert_eq!(a["LOGPIPE_BROKERS"], "k2:9092");
        assert_eq!(a["LOGPIPE_TOPIC"], "logs");
        assert_eq!(a["LOGPIPE_INFLUX_URL"], "http://i:8086");
        assert_eq!(a["LOGPIPE_INFLUX_DB"], "logs");
        assert_eq!(
            a["LOGPIPE_KAFKA"],
            "session.timeout.ms=6000,fetch.wait.max.ms=10"
        );
        assert!(!a.contains_key("LOGPIPE_PATHS"), "another command's table");
        let p = get(text, "produce").unwrap();
        assert_eq!(p["LOGPIPE_BROKERS"], "k1:9092");
        assert_eq!(p["LOGPIPE_PATHS"], "/var/log/a.log,/var/log/b.log");
        assert_eq!(p["LOGPIPE_FROM_BEGINNING"], "true");
    }

    #[test]
    fn unknown_tables_and_keys_are_named_with_their_line() {
        let e = get(
            "brokers = \"k\"\n\n[analyze]\ninflux-ur = \"x\"\n",
            "analyze",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("unknown key `influx-ur` for `logpipe analyze`"),
            "{e}"
        );
        assert!(e.contains("l.toml:"), "{e}");
        let e = get("brokers = \"k\"\nbrokerz = 1\n", "analyze")
            .unwrap_err()
            .to_string();
        assert!(e.contains("l.toml:2: unknown key `brokerz`"), "{e}");
        // The top-level topic is the log topic, not the rollup's fleet topic.
        let r = get("topic = \"raw\"\n", "rollup").unwrap();
        assert!(r.is_empty(), "{r:?}");
        assert_eq!(
            get("topic = \"raw\"\n", "status").unwrap()["LOGPIPE_TOPIC"],
            "raw"
        );
        let e = get("[analyse]\nbrokers = \"k\"\n", "analyze")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("l.toml:1: unknown table [analyse]") && e.contains("analyze"),
            "{e}"
        );
        // A table that is not this command's is checked all the same.
        let e = get("[archive]\nwindow = \"10s\"\n", "analyze")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown key `window` for `logpipe archive`"),
            "{e}"
        );
        let e = get("[status]\njson = true\n", "status")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot be set in the config file"), "{e}");
        let e = get("brokers = \"k\n", "analyze").unwrap_err().to_string();
        assert!(e.contains("l.toml") && e.contains("line 1"), "{e}");
    }

    #[test]
    fn the_example_file_is_valid_for_every_command() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/logpipe.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        for c in [
            "produce", "analyze", "archive", "rollup", "replay", "status", "top", "demo",
        ] {
            settings(&text, &path, c).unwrap_or_else(|e| panic!("{c}: {e:#}"));
        }
        let inputs = logpipe_producer::discover::inputs_from_toml(&text).unwrap();
        assert!(!inputs.is_empty());
    }
}
