//! A socket population on loopback shaped like a busy server's: mostly TIME_WAIT, a tenth of the
//! sockets ESTABLISHED, some CLOSE_WAIT (with their peers' orphaned FIN_WAIT2), and listeners.
//!
//! TIME_WAIT sockets hold no descriptor: each comes from a connect/accept/close cycle in which the client
//! closes first. Clients connect from several 127.0.0.x source addresses to listeners on several
//! 127.0.1.x addresses and two ports, so no (source, destination, port) tuple comes near the 28k
//! ephemeral ports it has. Everything here runs in the calling thread's network namespace.

use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use socket2::{Domain, SockAddr, Socket, Type};
use sockfleet_domain::{FamilyCounts, StateCounts, TcpState};

/// Ports the destination listeners use on every destination address.
const DESTINATION_PORTS: [u16; 2] = [8080, 5432];
/// IPv4 destination addresses: 127.0.1.1 ..= 127.0.1.4.
const IPV4_DESTINATIONS: u8 = 4;
/// IPv4 source addresses: 127.0.0.2 ..= 127.0.0.5.
const IPV4_SOURCES: u8 = 4;
/// Ephemeral ports per (source, destination, port) tuple with the default `ip_local_port_range`.
const EPHEMERAL_PORTS: usize = 60999 - 32768 + 1;
/// Share of a tuple's ephemeral ports a population may use, so the kernel's port search stays short.
const PORT_BUDGET: f64 = 0.75;
/// How long a closing handshake may take to finish.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// How many sockets of each kind a population has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mix {
    /// Listeners in total: the 10 destination listeners plus idle ones on 127.0.0.1.
    pub listeners: usize,
    /// Connected pairs on IPv4 (two ESTABLISHED sockets each).
    pub established_v4: usize,
    /// Connected pairs on IPv6.
    pub established_v6: usize,
    /// Server sockets in CLOSE_WAIT; each client closed, so it sits in (orphaned) FIN_WAIT2.
    pub close_wait: usize,
    /// TIME_WAIT on IPv4.
    pub time_wait_v4: usize,
    /// TIME_WAIT on IPv6.
    pub time_wait_v6: usize,
}

impl Mix {
    /// The mix for about `total` sockets: 10 % ESTABLISHED (pairs), 1 % CLOSE_WAIT and as many
    /// FIN_WAIT2, listeners (one per 500 sockets, at least 16), TIME_WAIT for the rest (2 % of it IPv6).
    pub fn for_total(total: usize) -> anyhow::Result<Mix> {
        let listeners = (total / 500).clamp(16, 2000);
        let established = total / 20;
        let established_v6 = established / 20;
        let close_wait = total / 100;
        let Some(time_wait) = total.checked_sub(listeners + 2 * established + 2 * close_wait)
        else {
            bail!("{total} sockets are too few for a population; ask for at least 64");
        };
        let time_wait_v6 = time_wait / 50;
        let mix = Mix {
            listeners,
            established_v4: established - established_v6,
            established_v6,
            close_wait,
            time_wait_v4: time_wait - time_wait_v6,
            time_wait_v6,
        };
        mix.check_port_budget()?;
        Ok(mix)
    }

    /// Sockets in the population.
    pub fn total(&self) -> usize {
        self.listeners
            + 2 * (self.established_v4 + self.established_v6)
            + 2 * self.close_wait
            + self.time_wait_v4
            + self.time_wait_v6
    }

    /// Descriptors the population holds open.
    pub fn descriptors(&self) -> usize {
        self.listeners + 2 * (self.established_v4 + self.established_v6) + self.close_wait
    }

    /// What a dump should show once every closing handshake has finished.
    pub fn expected(&self) -> FamilyCounts {
        let v6_listeners = DESTINATION_PORTS.len();
        let mut ipv4 = StateCounts::default();
        ipv4.set(TcpState::Listen, (self.listeners - v6_listeners) as u64);
        ipv4.set(TcpState::Established, 2 * self.established_v4 as u64);
        ipv4.set(TcpState::CloseWait, self.close_wait as u64);
        ipv4.set(TcpState::FinWait2, self.close_wait as u64);
        ipv4.set(TcpState::TimeWait, self.time_wait_v4 as u64);
        let mut ipv6 = StateCounts::default();
        ipv6.set(TcpState::Listen, v6_listeners as u64);
        ipv6.set(TcpState::Established, 2 * self.established_v6 as u64);
        ipv6.set(TcpState::TimeWait, self.time_wait_v6 as u64);
        FamilyCounts { ipv4, ipv6 }
    }

    fn check_port_budget(&self) -> anyhow::Result<()> {
        let budget = (EPHEMERAL_PORTS as f64 * PORT_BUDGET) as usize;
        let v4_tuples = usize::from(IPV4_SOURCES * IPV4_DESTINATIONS) * DESTINATION_PORTS.len();
        let v4_clients = self.established_v4 + self.close_wait + self.time_wait_v4;
        let v6_clients = self.established_v6 + self.time_wait_v6;
        if v4_clients > v4_tuples * budget || v6_clients > DESTINATION_PORTS.len() * budget {
            bail!(
                "{} sockets need more ephemeral ports than the population's {v4_tuples} IPv4 and {} \
                 IPv6 (source, destination, port) tuples offer; bench fewer sockets",
                self.total(),
                DESTINATION_PORTS.len()
            );
        }
        Ok(())
    }
}

/// A population in place: the descriptors that keep its sockets open (TIME_WAIT needs none).
pub struct Population {
    /// When the first socket was made; its TIME_WAIT sockets start expiring 60 s later.
    pub started: Instant,
    /// How long building took.
    pub build_time: Duration,
    _listeners: Vec<TcpListener>,
    _streams: Vec<TcpStream>,
}

/// Destination listeners of one family, in round-robin order.
struct Destinations {
    listeners: Vec<(SocketAddr, TcpListener)>,
    next: usize,
}

impl Destinations {
    fn bind(addresses: &[IpAddr]) -> anyhow::Result<Destinations> {
        let mut listeners = Vec::new();
        for &ip in addresses {
            for port in DESTINATION_PORTS {
                let address = SocketAddr::new(ip, port);
                let listener = TcpListener::bind(address)
                    .with_context(|| format!("cannot listen on {address}"))?;
                listeners.push((address, listener));
            }
        }
        Ok(Destinations { listeners, next: 0 })
    }
}

/// Source addresses of one family, in round-robin order (`None`: let the kernel choose).
struct Sources {
    addresses: Vec<Option<IpAddr>>,
    next: usize,
}

impl Sources {
    fn next(&mut self) -> Option<IpAddr> {
        let address = self.addresses[self.next % self.addresses.len()];
        self.next += 1;
        address
    }
}

/// Builds the population for `mix` in the calling thread's network namespace.
pub fn build(mix: Mix) -> anyhow::Result<Population> {
    let started = Instant::now();
    let v4_destinations: Vec<IpAddr> = (1..=IPV4_DESTINATIONS)
        .map(|last| IpAddr::V4(Ipv4Addr::new(127, 0, 1, last)))
        .collect();
    let mut v4 = Destinations::bind(&v4_destinations)?;
    let mut v6 = Destinations::bind(&[IpAddr::V6(Ipv6Addr::LOCALHOST)])?;
    let mut v4_sources = Sources {
        addresses: (0..IPV4_SOURCES)
            .map(|n| Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + n))))
            .collect(),
        next: 0,
    };
    let mut v6_sources = Sources {
        addresses: vec![None],
        next: 0,
    };
    let mut listeners = Vec::with_capacity(mix.listeners);
    let mut streams = Vec::with_capacity(mix.descriptors());
    let idle = mix.listeners - v4.listeners.len() - v6.listeners.len();
    for _ in 0..idle {
        listeners.push(
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("cannot open an idle listener")?,
        );
    }

    // The sources advance once per connection and the destinations once per round of sources, so every
    // (source, destination) tuple gets its share.
    let connect = |destinations: &mut Destinations,
                   sources: &mut Sources|
     -> anyhow::Result<(TcpStream, TcpStream)> {
        let source = sources.next();
        if sources.next.is_multiple_of(sources.addresses.len()) {
            destinations.next += 1;
        }
        let (destination, listener) =
            &destinations.listeners[destinations.next % destinations.listeners.len()];
        connect_pair(source, *destination, listener)
    };

    for _ in 0..mix.established_v4 {
        let (client, server) = connect(&mut v4, &mut v4_sources)?;
        streams.extend([client, server]);
    }
    for _ in 0..mix.established_v6 {
        let (client, server) = connect(&mut v6, &mut v6_sources)?;
        streams.extend([client, server]);
    }
    for _ in 0..mix.close_wait {
        let (client, server) = connect(&mut v4, &mut v4_sources)?;
        drop(client);
        streams.push(server);
    }
    for _ in 0..mix.time_wait_v4 {
        let (client, server) = connect(&mut v4, &mut v4_sources)?;
        close_client_first(client, server)?;
    }
    for _ in 0..mix.time_wait_v6 {
        let (client, server) = connect(&mut v6, &mut v6_sources)?;
        close_client_first(client, server)?;
    }
    listeners.extend(v4.listeners.into_iter().map(|(_, listener)| listener));
    listeners.extend(v6.listeners.into_iter().map(|(_, listener)| listener));
    Ok(Population {
        started,
        build_time: started.elapsed(),
        _listeners: listeners,
        _streams: streams,
    })
}

/// Connects from `source` (port chosen by the kernel at connect time) to `destination` and accepts
/// the connection on `listener`; returns (client, server).
fn connect_pair(
    source: Option<IpAddr>,
    destination: SocketAddr,
    listener: &TcpListener,
) -> anyhow::Result<(TcpStream, TcpStream)> {
    let socket = Socket::new(Domain::for_address(destination), Type::STREAM, None)
        .context("cannot create a client socket")?;
    if let Some(source) = source {
        // Without IP_BIND_ADDRESS_NO_PORT a bind to port 0 reserves a port for every destination at
        // once; with it the port is chosen at connect time per (source, destination, port).
        set_bind_address_no_port(&socket).context("IP_BIND_ADDRESS_NO_PORT")?;
        socket
            .bind(&SockAddr::from(SocketAddr::new(source, 0)))
            .with_context(|| format!("cannot bind a client to {source}"))?;
    }
    socket
        .connect(&SockAddr::from(destination))
        .with_context(|| {
            format!("cannot connect from {source:?} to {destination} (ephemeral ports exhausted?)")
        })?;
    let (server, _) = listener
        .accept()
        .with_context(|| format!("cannot accept on {destination}"))?;
    Ok((TcpStream::from(socket), server))
}

/// Closes the client, waits for its FIN on the server side, then closes the server: the client ends in
/// TIME_WAIT and the server's socket is gone after its LAST_ACK.
fn close_client_first(client: TcpStream, mut server: TcpStream) -> anyhow::Result<()> {
    drop(client);
    server
        .set_read_timeout(Some(SETTLE_TIMEOUT))
        .context("cannot set a read timeout")?;
    let mut byte = [0u8; 1];
    let read = server
        .read(&mut byte)
        .context("the server never saw the client's FIN")?;
    if read != 0 {
        bail!("the client sent data before closing");
    }
    Ok(())
}

fn set_bind_address_no_port(socket: &Socket) -> io::Result<()> {
    let on: libc::c_int = 1;
    let length = libc::socklen_t::try_from(size_of::<libc::c_int>()).unwrap_or(4);
    // SAFETY: `on` is a live c_int of `length` bytes for the call; the descriptor is the socket's,
    // which outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            std::ptr::from_ref(&on).cast(),
            length,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixes_add_up_to_the_requested_size() {
        for total in [64, 1000, 20_000, 100_000, 500_000] {
            let mix = Mix::for_total(total).unwrap();
            assert_eq!(mix.total(), total);
            assert_eq!(mix.expected().combined().total(), total as u64);
            let time_wait = mix.time_wait_v4 + mix.time_wait_v6;
            if total >= 1000 {
                assert!(time_wait * 100 >= total * 80, "{mix:?}");
            }
        }
        assert!(Mix::for_total(10).is_err());
        assert!(Mix::for_total(2_000_000).is_err());
    }
}
