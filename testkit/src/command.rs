//! Running helper commands (`ip`, `ss`, the agent) with a time limit.

use std::ffi::OsStr;
use std::io::Read;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How long any one command may run.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `command` to completion within [`COMMAND_TIMEOUT`] and returns its standard output; fails
/// the test if it cannot start, runs too long or exits unsuccessfully.
pub fn run(command: &mut Command) -> String {
    let shown = describe(command);
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot run {shown}: {error}"));
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{shown} did not finish within {COMMAND_TIMEOUT:?}");
            }
            Err(error) => panic!("cannot wait for {shown}: {error}"),
        }
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    assert!(
        status.success(),
        "{shown} failed ({status}):\n{stderr}{stdout}"
    );
    stdout
}

/// Reads a child's pipe to the end on a helper thread, so a full pipe never blocks the child.
fn drain(pipe: Option<impl Read + Send + 'static>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_string(&mut text);
        }
        text
    })
}

fn describe(command: &Command) -> String {
    let mut shown = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args().map(OsStr::to_string_lossy) {
        shown.push(' ');
        shown.push_str(&arg);
    }
    shown
}
