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
