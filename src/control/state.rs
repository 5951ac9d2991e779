//! The control plane's reducer: what a config-editing command makes of the current config. Pure — no threads, no
//! sockets, no files, no DNS — so every edit path is tested here; `Control::commit` then checks the result with the
//! config file's rules, resolves it and applies it on every worker. An edit that is refused changes nothing.

use std::path::Path;

use super::command::{Command, CommandError, ErrorKind};
use crate::config::{parse_config, resolve_relative_paths, to_toml, Config};

/// The config `command` asks for, from `current`. `folder` is the config file's folder, against which relative
/// paths in a config given as text are resolved (as the file's own would be). Commands that edit nothing are
/// refused as invalid requests.
pub fn apply(current: &Config, command: &Command, folder: &Path) -> Result<Config, CommandError> {
    match command {
        Command::ConfigApply { toml } | Command::ConfigDiff { toml } => parse_candidate(toml, folder),
        Command::BackendAdd { url, weight, id } => {
            // Through the file's rules, so a bad URL, weight or id is refused as the file would refuse it.
            let mut text = to_toml(current);
            text.push_str(&format!(
                "\n[[backends]]\nurl = {}\nweight = {}\n",
                toml::Value::String(url.clone()),
                weight.map_or(1, i64::from)
            ));
            if let Some(id) = id {
                text.push_str(&format!("id = {}\n", toml::Value::String(id.clone())));
            }
            parse_candidate(&text, folder)
        }
        Command::BackendRemove { id } => edit_backend(current, id, |config, index| {
            config.backends.remove(index);
        }),
        Command::BackendSet { id, weight } => edit_backend(current, id, |config, index| {
            config.backends[index].weight = *weight;
        }),
        Command::BackendDrain { id } => edit_backend(current, id, |config, index| {
            config.backends[index].drain = true;
        }),
        Command::Status
        | Command::ConfigShow
        | Command::Reload
        | Command::Backends
        | Command::Versions
        | Command::Rollback { .. }
        | Command::LogLevel { .. }
        | Command::RolloutStart { .. }
        | Command::RolloutStatus
        | Command::RolloutPause
        | Command::RolloutResume
        | Command::RolloutAbort
        | Command::Metrics
        | Command::MetricsSummary
        | Command::Health
        | Command::CertReload
        | Command::Certificates => Err(CommandError::invalid_request(format!(
            "{} does not edit the config",
            command.name()
        ))),
    }
}

/// Parses a whole config given as text, resolving relative paths against `folder`.
pub fn parse_candidate(text: &str, folder: &Path) -> Result<Config, CommandError> {
    let mut candidate =
        parse_config(text).map_err(|errors| CommandError::new(ErrorKind::InvalidConfig, errors.to_string()))?;
    resolve_relative_paths(&mut candidate, folder);
    Ok(candidate)
}

fn edit_backend(current: &Config, id: &str, edit: impl FnOnce(&mut Config, usize)) -> Result<Config, CommandError> {
    let index = backend_index(current, id)?;
    let mut candidate = current.clone();
    edit(&mut candidate, index);
    Ok(candidate)
}

/// Where the backend named `id` is in `config`.
pub fn backend_index(config: &Config, id: &str) -> Result<usize, CommandError> {
    config
        .backends
        .iter()
        .position(|backend| backend.id == id)
        .ok_or_else(|| CommandError::new(ErrorKind::NotFound, format!("no backend with id {id:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[[frontends]]
name = "web"
address = "127.0.0.1"
port = 0

[[backends]]
url = "http://127.0.0.1:9001"
id = "a"

[[backends]]
url = "http://127.0.0.1:9002"
id = "b"
weight = 2
"#;

    fn base() -> Config {
        parse_candidate(BASE, Path::new("/etc/corelb")).unwrap()
    }

    fn run(command: Command) -> Result<Config, CommandError> {
        apply(&base(), &command, Path::new("/etc/corelb"))
    }

    fn ids(config: &Config) -> Vec<&str> {
        config.backends.iter().map(|backend| backend.id.as_str()).collect()
    }

    #[test]
    fn adding_a_backend_appends_it_with_its_weight() {
        let next = run(Command::BackendAdd {
            url: "http://127.0.0.1:9003".into(),
            weight: Some(5),
            id: Some("c".into()),
        })
        .unwrap();
        assert_eq!(ids(&next), ["a", "b", "c"]);
        assert_eq!(next.backends[2].weight, 5);
        assert_eq!(next.backends[..2], base().backends[..], "the others are untouched");
    }

    #[test]
    fn a_bad_backend_is_refused_with_the_field_and_the_reason() {
        let error = run(Command::BackendAdd {
            url: "ftp://127.0.0.1:9003".into(),
            weight: None,
            id: None,
        })
        .unwrap_err();
        assert_eq!(error.kind, ErrorKind::InvalidConfig);
        assert!(error.message.contains("backends[2].url"), "{}", error.message);
        let duplicate = run(Command::BackendAdd {
            url: "http://127.0.0.1:9004".into(),
            weight: None,
            id: Some("a".into()),
        })
        .unwrap_err();
        assert_eq!(duplicate.kind, ErrorKind::InvalidConfig, "{}", duplicate.message);
    }

    #[test]
    fn removing_setting_and_draining_edit_only_the_named_backend() {
        assert_eq!(ids(&run(Command::BackendRemove { id: "a".into() }).unwrap()), ["b"]);
        let weighted = run(Command::BackendSet {
            id: "a".into(),
            weight: 7,
        })
        .unwrap();
        assert_eq!((weighted.backends[0].weight, weighted.backends[1].weight), (7, 2));
        let drained = run(Command::BackendDrain { id: "b".into() }).unwrap();
        assert_eq!((drained.backends[0].drain, drained.backends[1].drain), (false, true));
    }

    #[test]
    fn an_unknown_backend_is_not_found() {
        for command in [
            Command::BackendRemove { id: "zz".into() },
            Command::BackendDrain { id: "zz".into() },
            Command::BackendSet {
                id: "zz".into(),
                weight: 1,
            },
        ] {
            assert_eq!(run(command).unwrap_err().kind, ErrorKind::NotFound);
        }
    }

    #[test]
    fn a_config_given_as_text_resolves_paths_against_the_config_folder() {
        let next = run(Command::ConfigApply { toml: BASE.into() }).unwrap();
        assert_eq!(next.control.socket, Path::new("/etc/corelb/corelb.sock"));
        let error = run(Command::ConfigApply {
            toml: "[server]\nworkers = 0\n".into(),
        })
        .unwrap_err();
        assert_eq!(error.kind, ErrorKind::InvalidConfig);
    }

    #[test]
    fn a_command_that_edits_nothing_is_refused() {
        assert_eq!(run(Command::Status).unwrap_err().kind, ErrorKind::InvalidRequest);
    }
}
