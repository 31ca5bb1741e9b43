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
    for sub in ["serve", "sandbox"] {
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
