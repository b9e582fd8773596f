//! Redis Sentinel: finds the current master for the Redis broker
//! ([`super::redis`]), which asks again on every (re)connect and while
//! connected, so a failover moves the node to the new master.
//!
//! URL form: `redis+sentinel://[user:pass@]host1:port1,host2:port2/master[/db]`.
//! The credentials and database are the master's; sentinels are asked
//! without authentication, over plain TCP.

use std::time::Duration;

/// A parsed `redis+sentinel://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SentinelUrl {
    /// `user:pass@` exactly as written (empty without credentials).
    userinfo: String,
    /// `host:port` of each sentinel, in the order given.
    pub(crate) sentinels: Vec<String>,
    /// The name sentinels monitor the master under.
    pub(crate) master: String,
    db: Option<u32>,
}

pub(crate) const SCHEME: &str = "redis+sentinel://";

impl SentinelUrl {
    /// `None` when `url` is not a sentinel URL; `Some(Err)` when it is, but malformed.
    pub(crate) fn parse(url: &str) -> Option<Result<Self, String>> {
        let rest = url.strip_prefix(SCHEME)?;
        Some(Self::parse_rest(rest))
    }

    fn parse_rest(rest: &str) -> Result<Self, String> {
        let (userinfo, rest) = match rest.rfind('@') {
            Some(at) => (&rest[..=at], &rest[at + 1..]),
            None => ("", rest),
        };
        let (hosts, path) = rest
            .split_once('/')
            .ok_or("a sentinel URL needs the master name: redis+sentinel://host:port,.../master")?;
        let sentinels: Vec<String> = hosts.split(',').map(str::to_owned).collect();
        for s in &sentinels {
            let ok = s
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !ok {
                return Err(format!("sentinel address {s:?} is not host:port"));
            }
        }
        let mut parts = path.split('/');
        let master = parts.next().unwrap_or_default().to_owned();
        if master.is_empty() {
            return Err("a sentinel URL needs the master name after the hosts".to_owned());
        }
        let db = match parts.next() {
            None | Some("") => None,
            Some(d) => Some(
                d.parse()
                    .map_err(|_| format!("database index {d:?} is not a number"))?,
            ),
        };
        if parts.next().is_some() {
            return Err("a sentinel URL ends after /master/db".to_owned());
        }
        Ok(Self {
            userinfo: userinfo.to_owned(),
            sentinels,
            master,
            db,
        })
    }

    /// The `redis://` URL of the master at `addr` (`host:port`), with this
    /// URL's credentials and database.
    pub(crate) fn master_url(&self, addr: &str) -> String {
        let db = self.db.map(|d| format!("/{d}")).unwrap_or_default();
        format!("redis://{}{addr}{db}", self.userinfo)
    }

    /// Asks the sentinels in turn for the master's `host:port`; the first
    /// that answers wins. Sentinels that do not know the master are skipped.
    pub(crate) async fn master_addr(&self, timeout: Duration) -> Result<String, String> {
        let mut errors = Vec::new();
        for s in &self.sentinels {
            match tokio::time::timeout(timeout, self.ask(s)).await {
                Ok(Ok(Some(addr))) => return Ok(addr),
                Ok(Ok(None)) => errors.push(format!("{s}: does not know {:?}", self.master)),
                Ok(Err(e)) => errors.push(format!("{s}: {e}")),
                Err(_) => errors.push(format!("{s}: timed out")),
            }
        }
        Err(format!(
            "no sentinel named the master {:?} ({})",
            self.master,
            errors.join("; ")
        ))
    }

    async fn ask(&self, sentinel: &str) -> redis::RedisResult<Option<String>> {
        let client = redis::Client::open(format!("redis://{sentinel}"))?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let mut cmd = redis::cmd("SENTINEL");
        cmd.arg("get-master-addr-by-name").arg(&self.master);
        let reply: Option<(String, u16)> = cmd.query_async(&mut conn).await?;
        Ok(reply.map(|(host, port)| {
            if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sentinel_urls() {
        let u = SentinelUrl::parse("redis+sentinel://app:pw@s1:26379,s2:26380/mymaster/2")
            .expect("sentinel")
            .expect("valid");
        assert_eq!(u.sentinels, ["s1:26379", "s2:26380"]);
        assert_eq!(u.master, "mymaster");
        assert_eq!(
            u.master_url("10.0.0.1:6379"),
            "redis://app:pw@10.0.0.1:6379/2"
        );
        let u = SentinelUrl::parse("redis+sentinel://h:1/m")
            .expect("s")
            .expect("ok");
        assert_eq!(u.master_url("h2:2"), "redis://h2:2");
        assert!(SentinelUrl::parse("redis://h:1").is_none());
        for bad in [
            "redis+sentinel://h:1",
            "redis+sentinel://h:1/",
            "redis+sentinel://h/m",
            "redis+sentinel://h:1/m/x",
            "redis+sentinel://h:1/m/0/extra",
        ] {
            assert!(SentinelUrl::parse(bad).expect("sentinel").is_err(), "{bad}");
        }
    }
}
