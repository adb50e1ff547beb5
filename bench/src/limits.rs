//! The descriptor limit and the namespace's TCP sysctls the populations need.

use std::fs;
use std::io;

use anyhow::{Context, bail};

/// What was done to `RLIMIT_NOFILE`.
#[derive(Debug, Clone, Copy)]
pub struct FdLimit {
    pub soft: u64,
    pub hard: u64,
}

/// Raises `RLIMIT_NOFILE` to at least `needed` descriptors: the soft limit up to the hard one, and the
/// hard one (as root) up to `fs.nr_open`. Fails, saying why, when `needed` cannot be reached.
pub fn raise_fd_limit(needed: u64) -> anyhow::Result<FdLimit> {
    let (soft, hard) = get_nofile()?;
    if soft >= needed {
        return Ok(FdLimit { soft, hard });
    }
    let mut new_hard = hard;
    if hard < needed {
        let nr_open = fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|raw| raw.trim().parse::<u64>().ok())
            .unwrap_or(hard);
        if nr_open < needed {
            bail!(
                "{needed} descriptors are needed but fs.nr_open is {nr_open}; raise it \
                 (sysctl -w fs.nr_open={needed}) or bench fewer sockets"
            );
        }
        new_hard = needed;
    }
    set_nofile(needed, new_hard).with_context(|| {
        format!(
            "cannot raise RLIMIT_NOFILE from {soft}/{hard} to {needed}/{new_hard} \
             (raising the hard limit needs root or CAP_SYS_RESOURCE)"
        )
    })?;
    let (soft, hard) = get_nofile()?;
    Ok(FdLimit { soft, hard })
}

fn get_nofile() -> anyhow::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit for the duration of the call.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) };
    if rc != 0 {
        return Err(io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    Ok((limit.rlim_cur, limit.rlim_max))
}

fn set_nofile(soft: u64, hard: u64) -> io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: `limit` is a valid rlimit that the call only reads.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reads a sysctl of the calling thread's network namespace (`net/ipv4/tcp_max_tw_buckets`).
pub fn read_sysctl(name: &str) -> anyhow::Result<String> {
    let path = format!("/proc/sys/{name}");
    let raw = fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    Ok(raw.trim().to_owned())
}

/// Writes a sysctl of the calling thread's network namespace and reads it back.
pub fn write_sysctl(name: &str, value: &str) -> anyhow::Result<()> {
    let path = format!("/proc/sys/{name}");
    fs::write(&path, value).with_context(|| format!("cannot write {value} to {path}"))?;
    let now = read_sysctl(name)?;
    if now != value {
        bail!("{path} reads {now} after writing {value}");
    }
    Ok(())
}
