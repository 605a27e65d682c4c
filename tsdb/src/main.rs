//! The `rimir` binary: `rimir tsdb …` block tools, and (with the write path) the server roles.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("tsdb") {
        return match rimir_tsdb::cli::run(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("rimir tsdb: {e}");
                ExitCode::FAILURE
            }
        };
    }
    eprintln!("usage: rimir tsdb <create-blocks-from|dump|list|analyze> …");
    ExitCode::from(2)
}
