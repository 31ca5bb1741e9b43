//! The README and `.env.example` stay in step with the code.

use clap::CommandFactory;
use waba_migrator::config::Cli;

fn read(file: &str) -> String {
    std::fs::read_to_string(format!("{}/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn every_setting_is_documented() {
    let readme = read("README.md");
    let env_example = read(".env.example");
    let cmd = Cli::command();
    for sub in ["serve", "sandbox", "reencrypt"] {
        let sub = cmd.find_subcommand(sub).unwrap();
        for arg in sub.get_arguments() {
            if let Some(env) = arg.get_env() {
                let env = env.to_str().unwrap();
                assert!(readme.contains(env), "README.md does not mention {env}");
                assert!(
                    env_example.contains(env),
                    ".env.example does not mention {env}"
                );
            }
        }
    }
}

#[test]
fn every_sandbox_scenario_is_in_the_readme() {
    let readme = read("README.md");
    for (digits, code, _) in waba_migrator::sandbox::SCENARIOS {
        let row = format!("| `…{digits}` | `{code}` |");
        assert!(
            readme.contains(&row),
            "README.md lacks the row for {digits}"
        );
    }
}

/// The README's error-code table, generated from the code (`UPDATE_DOCS=1` rewrites it).
#[test]
fn error_code_table_matches_the_code() {
    use waba_migrator::domain::ErrorCode;
    let mut table = String::from(
        "| `error.code` | who acts | `retry` can help | meaning | what to do |\n|---|---|---|---|---|\n",
    );
    for code in ErrorCode::ALL {
        let (message, remediation, actor, retryable) = code.describe();
        let actor = serde_json::to_value(actor).unwrap();
        table.push_str(&format!(
            "| `{}` | {} | {} | {} | {} |\n",
            code.as_str(),
            actor.as_str().unwrap(),
            if retryable { "yes" } else { "no" },
            message.replace('|', "\\|"),
            remediation.replace('|', "\\|"),
        ));
    }
    let path = format!("{}/README.md", env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(&path).unwrap();
    let (start, end) = ("<!-- error-codes:start -->\n", "<!-- error-codes:end -->");
    let i = readme
        .find(start)
        .expect("README has the error-codes markers")
        + start.len();
    let j = readme.find(end).unwrap();
    if std::env::var("UPDATE_DOCS").is_ok() {
        let updated = format!("{}{}{}", &readme[..i], table, &readme[j..]);
        std::fs::write(&path, updated).unwrap();
        return;
    }
    assert!(
        readme[i..j] == table,
        "README's error-code table is out of date: run `UPDATE_DOCS=1 cargo test --test api docs`"
    );
}

/// `waba-migrator --help` and every subcommand's `--help` describe every option.
#[test]
fn every_option_has_help() {
    let cmd = Cli::command();
    assert!(cmd.get_about().is_some());
    for sub in cmd.get_subcommands() {
        assert!(
            sub.get_about().is_some(),
            "`{}` has no description",
            sub.get_name()
        );
        for arg in sub.get_arguments() {
            assert!(
                arg.get_help().is_some(),
                "`{} --{}` has no help text",
                sub.get_name(),
                arg.get_id()
            );
        }
    }
}

/// docker-compose.yml (which cannot run here: no Docker engine) parses, and names only real
/// services, subcommands, flags and settings of the binary; the Dockerfile's pieces it relies
/// on (binary path, health check, non-root user) exist.
#[test]
fn compose_and_dockerfile_name_only_real_things() {
    let mut compose: serde_norway::Value =
        serde_norway::from_str(&read("docker-compose.yml")).expect("docker-compose.yml is YAML");
    compose.apply_merge().expect("merge keys resolve");
    let services = compose["services"].as_mapping().expect("services");
    let names: Vec<&str> = services.keys().filter_map(|k| k.as_str()).collect();
    for want in ["postgres", "migrate", "sandbox", "app"] {
        assert!(names.contains(&want), "compose lacks the {want} service");
    }
    let cmd = Cli::command();
    let dockerfile = read("Dockerfile");
    for (name, svc) in services {
        let name = name.as_str().unwrap();
        if let Some(deps) = svc["depends_on"].as_mapping() {
            for dep in deps.keys() {
                assert!(
                    names.contains(&dep.as_str().unwrap()),
                    "{name} depends on an unknown service {dep:?}"
                );
            }
        }
        let image = svc["image"].as_str().unwrap_or_default();
        if image.starts_with("postgres:") {
            assert!(
                svc["healthcheck"]["test"].is_sequence(),
                "postgres needs a healthcheck"
            );
            continue;
        }
        assert_eq!(image, "waba-migrator:local", "{name}");
        assert_eq!(
            svc["build"].as_str(),
            Some("."),
            "{name} is built from the Dockerfile"
        );
        let command: Vec<&str> = svc["command"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let sub = cmd
            .find_subcommand(command[0])
            .unwrap_or_else(|| panic!("{name}: no subcommand {}", command[0]));
        for flag in command.iter().filter(|a| a.starts_with("--")) {
            assert!(
                sub.get_arguments()
                    .any(|a| a.get_long() == Some(flag.trim_start_matches("--"))),
                "{name}: `{}` has no {flag}",
                command[0]
            );
        }
        let settings: Vec<String> = sub
            .get_arguments()
            .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
            .collect();
        if let Some(env) = svc["environment"].as_mapping() {
            for key in env.keys().map(|k| k.as_str().unwrap()) {
                assert!(
                    key == "RUST_LOG" || settings.iter().any(|s| s == key),
                    "{name}: `{}` has no setting {key}",
                    command[0]
                );
            }
        }
        if let Some(test) = svc["healthcheck"]["test"].as_sequence() {
            let binary = test[1].as_str().unwrap();
            assert!(
                dockerfile.contains(binary),
                "{name}: {binary} is not in the image"
            );
            assert!(cmd.find_subcommand(test[2].as_str().unwrap()).is_some());
        }
    }
    for needle in [
        "COPY --from=builder /usr/local/bin/waba-migrator /usr/local/bin/waba-migrator",
        "USER nonroot",
        "HEALTHCHECK",
        "cargo chef cook",
    ] {
        assert!(dockerfile.contains(needle), "Dockerfile lacks `{needle}`");
    }
}
