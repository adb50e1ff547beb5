//! `closewait_leak`: a TCP server with the classic CLOSE_WAIT bug, for the alert tests.
//!
//! It listens on 127.0.0.1 (a free port), prints the port on a line of its own, then accepts every
//! connection and never reads from nor closes one. Each connection its client closes therefore stays in
//! CLOSE_WAIT, owned by this process, and their number only grows: what `CloseWaitLeak` and
//! `CloseWaitStuck` look for. The name is short enough (at most 15 bytes) to be the process's whole
//! `/proc/PID/comm`.
//!
//! It never outlives its test: it exits when its standard input reaches end of file (the test closed
//! it, or died), after [`LIFETIME`] at the latest, and it holds at most [`MAX_HELD`] connections.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::process::ExitCode;
use std::thread;
use std::time::Duration;

/// Longest the process lives, whatever happens to its test.
const LIFETIME: Duration = Duration::from_secs(300);
/// Most connections held; past it the process stops accepting (and so stops leaking).
const MAX_HELD: usize = 10_000;

fn main() -> ExitCode {
    let listener = match TcpListener::bind((Ipv4Addr::LOCALHOST, 0)) {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("closewait_leak: cannot listen on 127.0.0.1: {error}");
            return ExitCode::FAILURE;
        }
    };
    let port = match listener.local_addr() {
        Ok(address) => address.port(),
        Err(error) => {
            eprintln!("closewait_leak: the listener has no address: {error}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout().lock();
    if writeln!(stdout, "{port}")
        .and_then(|()| stdout.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    drop(stdout);

    thread::spawn(exit_when_stdin_closes);
    thread::spawn(|| {
        thread::sleep(LIFETIME);
        std::process::exit(0);
    });

    // The leak: every accepted connection is kept, unread and open, until the process exits.
    let mut held = Vec::new();
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => held.push(stream),
            Err(error) => eprintln!("closewait_leak: accept failed: {error}"),
        }
        if held.len() >= MAX_HELD {
            break;
        }
    }
    // Full: keep what is held until one of the exit threads ends the process.
    loop {
        thread::park();
    }
}

/// Reads standard input to its end, then ends the process.
fn exit_when_stdin_closes() {
    let mut stdin = std::io::stdin().lock();
    let mut buffer = [0u8; 256];
    while matches!(stdin.read(&mut buffer), Ok(read) if read > 0) {}
    std::process::exit(0);
}
