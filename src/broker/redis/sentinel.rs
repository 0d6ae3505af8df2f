//! Redis Sentinel: finding the primary before every (re)connect, and
//! noticing when the server the broker talks to is no longer it.
//!
//! Before each connection the broker asks the sentinels, in order, for the
//! primary's address (`SENTINEL get-master-addr-by-name`), connects there
//! with the settings of [`RedisConfig::url`](super::RedisConfig::url)
//! (credentials, database, TLS), and checks with `ROLE` that it reached a
//! primary. The subscription's liveness probe also asks `ROLE`: a primary
//! demoted to a replica (a failover while the old one stayed reachable)
//! makes both connections reconnect, so the broker never keeps publishing
//! to a replica, where messages would reach only that replica's
//! subscribers, while reporting Up.

use redis::{ConnectionAddr, ConnectionInfo, ErrorKind, IntoConnectionInfo, RedisResult, Value};

use super::{redact, BrokerError, Shared};

/// The sentinels that watch a primary, and its name.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SentinelConfig {
    /// `redis://host:port` (or `rediss://`) of each sentinel, asked in order.
    pub sentinels: Vec<String>,
    /// The primary's name in the sentinels' configuration
    /// (`sentinel monitor NAME …`).
    pub master: String,
}

/// `redis+sentinel://[user:password@]host:port[,host:port…]/NAME[/DB]`
/// (or `rediss+sentinel://` for TLS): the sentinels, the primary's name,
/// and the URL (credentials, database, TLS) for the primary itself. The
/// credentials are the primary's; sentinels are reached without any.
pub(super) fn parse_url(url: &str) -> Result<(SentinelConfig, String), BrokerError> {
    let bad = |why: &str| BrokerError::Config(format!("{}: {why}", redact(url)));
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("redis+sentinel://") {
        ("redis", rest)
    } else if let Some(rest) = url.strip_prefix("rediss+sentinel://") {
        ("rediss", rest)
    } else {
        return Err(bad(
            "a sentinel URL starts with redis+sentinel:// or rediss+sentinel://",
        ));
    };
    let (userinfo, rest) = match rest.rfind('@') {
        Some(at) => (&rest[..=at], &rest[at + 1..]),
        None => ("", rest),
    };
    let (hosts, path) = rest
        .split_once('/')
        .ok_or_else(|| bad("no primary name: add /NAME after the sentinels"))?;
    let (master, db) = match path.split_once('/') {
        Some((master, db)) => (master, Some(db)),
        None => (path, None),
    };
    if master.is_empty() {
        return Err(bad("an empty primary name"));
    }
    let sentinels: Vec<String> = hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|h| format!("{scheme}://{h}"))
        .collect();
    if sentinels.is_empty() {
        return Err(bad("no sentinel address"));
    }
    // The primary's address is filled in at connect time; this one only
    // carries its settings.
    let primary = match db {
        Some(db) => format!("{scheme}://{userinfo}127.0.0.1/{db}"),
        None => format!("{scheme}://{userinfo}127.0.0.1"),
    };
    Ok((
        SentinelConfig {
            sentinels,
            master: master.to_owned(),
        },
        primary,
    ))
}

impl Shared {
    /// The primary's connection settings: the template's, at the address the
    /// first sentinel that knows the primary gives.
    pub(super) async fn resolve_primary(
        &self,
        sentinel: &SentinelConfig,
    ) -> RedisResult<ConnectionInfo> {
        let mut last = None;
        for url in &sentinel.sentinels {
            let asked = tokio::time::timeout(self.config.connect_timeout, async {
                let client = redis::Client::open(url.as_str().into_connection_info()?)?;
                let mut conn = client
                    .get_multiplexed_async_connection_with_config(&self.connection_config())
                    .await?;
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(&sentinel.master)
                    .query_async::<Option<(String, u16)>>(&mut conn)
                    .await
            })
            .await;
            match asked {
                Ok(Ok(Some((host, port)))) => return Ok(self.primary_at(host, port)),
                Ok(Ok(None)) => {
                    last = Some(redis::RedisError::from((
                        ErrorKind::MasterNameNotFoundBySentinel,
                        "the sentinel does not know this primary",
                        sentinel.master.clone(),
                    )))
                }
                Ok(Err(err)) => last = Some(err),
                Err(_) => {
                    last = Some(redis::RedisError::from((
                        ErrorKind::Io,
                        "no answer from the sentinel in time",
                        redact(url),
                    )))
                }
            }
        }
        Err(last.unwrap_or_else(|| {
            redis::RedisError::from((ErrorKind::EmptySentinelList, "no sentinel configured"))
        }))
    }

    fn primary_at(&self, host: String, port: u16) -> ConnectionInfo {
        let template = self.client.get_connection_info().clone();
        let addr = match template.addr() {
            ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => ConnectionAddr::TcpTls {
                host,
                port,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => ConnectionAddr::Tcp(host, port),
        };
        template.set_addr(addr)
    }
}

/// Whether the server behind `conn` is a primary (`ROLE` says `master`).
pub(super) async fn is_primary<C: redis::aio::ConnectionLike>(conn: &mut C) -> RedisResult<bool> {
    let role: Value = redis::cmd("ROLE").query_async(conn).await?;
    Ok(match role {
        Value::Array(items) => {
            matches!(
                items.first(),
                Some(Value::BulkString(b)) if b.as_slice() == b"master"
            ) || matches!(items.first(), Some(Value::SimpleString(s)) if s == "master")
        }
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls() {
        let (s, primary) =
            parse_url("redis+sentinel://:pw@127.0.0.1:26379,h2:26380/mymaster/2").unwrap();
        assert_eq!(s.sentinels, ["redis://127.0.0.1:26379", "redis://h2:26380"]);
        assert_eq!(s.master, "mymaster");
        assert_eq!(primary, "redis://:pw@127.0.0.1/2");
        let (s, primary) = parse_url("rediss+sentinel://h:1/m").unwrap();
        assert_eq!(
            (s.sentinels[0].as_str(), primary.as_str()),
            ("rediss://h:1", "rediss://127.0.0.1")
        );
        for bad in [
            "redis://h:1/m",
            "redis+sentinel://h:1",
            "redis+sentinel://h:1/",
            "redis+sentinel:///m",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }
}
