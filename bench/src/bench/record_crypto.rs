//! The floor under a TLS-terminating proxy's CPU per request, past the relay floor: the
//! record crypto. A proxy that terminates TLS on both sides (HBONE in, HBONE out) opens
//! the request on the way in and seals it on the way out, and opens and seals the response
//! the same way; whatever else it does, that much is left. Measured with ring's AEAD
//! directly (the one rustls uses here), on the suite the HBONE connections negotiate, as
//! TLS 1.3 records: at most 16 KiB of plaintext each plus the content type byte, the
//! record header as associated data, a nonce per record. Also the cost of one plaintext
//! copy of 16 KiB, since every copy of a body counts against the 16 KiB target.

use std::hint::black_box;
use std::time::{Duration, Instant};

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, NONCE_LEN};
use rustls::CipherSuite;

use super::tls_floor::thread_cpu;

/// A typical request head (`GET /path HTTP/1.1`, `host`, a few headers).
pub const REQUEST_HEAD: usize = 100;

/// The most plaintext one TLS record carries.
const MAX_RECORD: usize = 16 * 1024;

/// Time spent per request and how many rounds it was measured over.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    /// Thread CPU per round.
    pub per_round: Duration,
    /// Rounds measured (at most the count asked for; fewer when the time cap came first).
    pub rounds: u32,
}

/// ring's AEAD for a TLS cipher suite, with the suite's name (`None` for a suite this
/// measurement does not know).
pub fn aead_of(suite: CipherSuite) -> Option<&'static aead::Algorithm> {
    match suite {
        CipherSuite::TLS13_AES_256_GCM_SHA384
        | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
        | CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => Some(&aead::AES_256_GCM),
        CipherSuite::TLS13_AES_128_GCM_SHA256
        | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        | CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => Some(&aead::AES_128_GCM),
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
        | CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        | CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => {
            Some(&aead::CHACHA20_POLY1305)
        }
        _ => None,
    }
}

/// One direction's record protection: a key and the next record's sequence number.
struct Records {
    key: LessSafeKey,
    iv: [u8; NONCE_LEN],
    seq: u64,
    buf: Vec<u8>,
}

impl Records {
    fn new(alg: &'static aead::Algorithm) -> anyhow::Result<Self> {
        let secret = [0x5a_u8; 32];
        let key = UnboundKey::new(alg, &secret[..alg.key_len()])
            .map_err(|_| anyhow::anyhow!("ring refused the key"))?;
        Ok(Self {
            key: LessSafeKey::new(key),
            iv: [0x3c; NONCE_LEN],
            seq: 0,
            buf: Vec::with_capacity(MAX_RECORD + 1 + alg.tag_len()),
        })
    }

    /// The TLS 1.3 nonce of the current record: the IV with the sequence number xored in.
    fn nonce(&self) -> Nonce {
        let mut n = self.iv;
        for (b, s) in n[NONCE_LEN - 8..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        Nonce::assume_unique_for_key(n)
    }

    /// Seals one record of `len` plaintext bytes and opens it again, checking the tag.
    fn seal_open(&mut self, len: usize) -> anyhow::Result<()> {
        self.buf.clear();
        self.buf.resize(len, 0x61);
        // The inner content type (application data).
        self.buf.push(0x17);
        let sealed = (self.buf.len() + self.key.algorithm().tag_len()) as u16;
        let [hi, lo] = sealed.to_be_bytes();
        let header = [0x17, 0x03, 0x03, hi, lo];
        self.key
            .seal_in_place_append_tag(self.nonce(), Aad::from(header), &mut self.buf)
            .map_err(|_| anyhow::anyhow!("seal failed"))?;
        let opened = self
            .key
            .open_in_place(self.nonce(), Aad::from(header), &mut self.buf)
            .map_err(|_| anyhow::anyhow!("open failed: the tag did not verify"))?;
        anyhow::ensure!(opened.len() == len + 1, "opened {} bytes", opened.len());
        black_box(opened);
        self.seq += 1;
        Ok(())
    }

    /// Seals and opens `len` bytes as records of at most [`MAX_RECORD`].
    fn message(&mut self, mut len: usize) -> anyhow::Result<()> {
        loop {
            let n = len.min(MAX_RECORD);
            self.seal_open(n)?;
            len -= n;
            if len == 0 {
                return Ok(());
            }
        }
    }
}

/// Runs `round` once to warm up, then up to `rounds` times or until `cap` of wall time has
/// passed (at least once), and returns the thread CPU per round.
fn timed(
    rounds: u32,
    cap: Duration,
    mut round: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Measured> {
    round()?;
    let wall = Instant::now();
    let start = thread_cpu();
    let mut done = 0;
    while done < rounds.max(1) && (done == 0 || wall.elapsed() < cap) {
        round()?;
        done += 1;
    }
    Ok(Measured {
        per_round: (thread_cpu() - start) / done,
        rounds: done,
    })
}

/// Record crypto per request of a TLS-terminating proxy with a `response`-byte response:
/// seal and open of the response and of a [`REQUEST_HEAD`]-byte request head with `alg`.
pub fn per_request(
    alg: &'static aead::Algorithm,
    response: usize,
    rounds: u32,
    cap: Duration,
) -> anyhow::Result<Measured> {
    let mut records = Records::new(alg)?;
    timed(rounds, cap, || {
        records.message(REQUEST_HEAD)?;
        records.message(response)
    })
}

/// One plaintext copy of `len` bytes (a `memcpy` between two buffers).
pub fn copy(len: usize, rounds: u32, cap: Duration) -> anyhow::Result<Measured> {
    let from = vec![0x61_u8; len];
    let mut to = vec![0_u8; len];
    timed(rounds, cap, || {
        black_box(&mut to).copy_from_slice(black_box(&from));
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_crypto_takes_positive_finite_time_in_a_bounded_loop() {
        for alg in [
            &aead::AES_256_GCM,
            &aead::AES_128_GCM,
            &aead::CHACHA20_POLY1305,
        ] {
            let m = per_request(alg, 16 * 1024, 20, Duration::from_secs(5)).unwrap();
            assert_eq!(m.rounds, 20);
            let us = m.per_round.as_secs_f64() * 1e6;
            assert!(us.is_finite() && us > 0.0, "{us}");
        }
        // A count too large to finish: the time cap ends it, soon after.
        let started = Instant::now();
        let m = per_request(
            &aead::AES_256_GCM,
            1024,
            u32::MAX,
            Duration::from_millis(50),
        )
        .unwrap();
        assert!(m.rounds > 0 && m.rounds < u32::MAX);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_larger_response_costs_more_crypto() {
        // Medians of a few tries, so one preempted run does not decide it.
        let median = |size| {
            let mut v: Vec<Duration> = (0..5)
                .map(|_| {
                    per_request(&aead::AES_256_GCM, size, 200, Duration::from_secs(2))
                        .unwrap()
                        .per_round
                })
                .collect();
            v.sort();
            v[2]
        };
        assert!(median(64 * 1024) > median(1024));
    }

    #[test]
    fn a_copy_is_timed_in_a_bounded_loop() {
        let m = copy(16 * 1024, 1000, Duration::from_secs(5)).unwrap();
        assert_eq!(m.rounds, 1000);
        assert!(m.per_round > Duration::ZERO);
        let m = copy(16 * 1024, u32::MAX, Duration::from_millis(20)).unwrap();
        assert!(m.rounds < u32::MAX);
    }

    #[test]
    fn the_suites_map_to_ring_aeads() {
        assert_eq!(
            aead_of(CipherSuite::TLS13_AES_256_GCM_SHA384),
            Some(&aead::AES_256_GCM)
        );
        assert_eq!(
            aead_of(CipherSuite::TLS13_CHACHA20_POLY1305_SHA256),
            Some(&aead::CHACHA20_POLY1305)
        );
        assert_eq!(aead_of(CipherSuite::TLS_NULL_WITH_NULL_NULL), None);
    }
}
