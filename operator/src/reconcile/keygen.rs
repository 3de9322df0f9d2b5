//! Key generation for steps 2 and 6, off the async workers and under the
//! `--max-concurrent-keygens` semaphore (see [`Context`](super::Context)).

use crate::crd::SigningAlg;
use crate::keyset::PrivateKey;

use super::Error;
use super::round::Round;

impl Round<'_> {
    pub(super) async fn generate(
        &self,
        alg: SigningAlg,
        kid: String,
        bits: u32,
    ) -> Result<PrivateKey, Error> {
        let k = kid.clone();
        // Never closed, so acquiring only waits for a free slot.
        let _slot = self
            .ctx
            .keygens
            .acquire()
            .await
            .map_err(|source| Error::KeygenSlot {
                kid: kid.clone(),
                source,
            })?;
        tokio::task::spawn_blocking(move || PrivateKey::generate(alg, &k, bits))
            .await
            .map_err(|source| Error::KeygenTask {
                kid: kid.clone(),
                source,
            })?
            .map_err(|source| Error::KeyGeneration { kid, source })
    }
}
