//! Recent full listings, so that a client paging through a listing costs one
//! registry read, not one per page.
//!
//! Page tokens are fixed by the wire format (page size and page number, no
//! revision), so the server cannot tell which listing a token continues. The
//! rule here: a request for the first page always reads the registry afresh
//! and keeps the result; a request for a later page is answered from the
//! listing kept for the same query if it is younger than [`MAX_AGE`], and
//! reads afresh otherwise. A client that pages through a listing therefore
//! sees one consistent snapshot (the original re-read everything for every
//! page, which made listing N items cost O(N²) reads); a poller that asks
//! for the first page always sees current data.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::client;

/// How long a listing is kept for the pages after the first.
pub const MAX_AGE: Duration = Duration::from_secs(60);

/// One kept listing: when it was read, the query it answers, the items.
type Kept<T> = (Instant, String, Arc<Vec<T>>);

/// The last listing of one kind of object.
pub struct Slot<T> {
    /// The listing kept, if any.
    last: Mutex<Option<Kept<T>>>,
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Slot {
            last: Mutex::new(None),
        }
    }
}

impl<T> Slot<T> {
    /// The listing for `query`: read by `fetch` for the first page or when
    /// nothing recent is kept, else the kept one.
    pub async fn get<F>(
        &self,
        query: &str,
        first_page: bool,
        fetch: F,
    ) -> client::Result<Arc<Vec<T>>>
    where
        F: Future<Output = client::Result<Vec<T>>>,
    {
        if !first_page {
            // A std mutex: held only to clone an Arc, never across an await.
            let last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((at, q, items)) = last.as_ref()
                && q == query
                && at.elapsed() < MAX_AGE
            {
                return Ok(items.clone());
            }
        }
        let items = Arc::new(fetch.await?);
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((Instant::now(), query.to_owned(), items.clone()));
        Ok(items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn later_pages_reuse_the_first_pages_listing_until_it_ages() {
        let slot: Slot<u32> = Slot::default();
        let a = slot.get("q", true, async { Ok(vec![1]) }).await.unwrap();
        assert_eq!(*a, vec![1]);
        let b = slot.get("q", false, async { Ok(vec![2]) }).await.unwrap();
        assert_eq!(*b, vec![1], "a later page is served from the kept listing");
        let c = slot
            .get("other", false, async { Ok(vec![3]) })
            .await
            .unwrap();
        assert_eq!(*c, vec![3], "another query reads afresh");
        let d = slot.get("q", true, async { Ok(vec![4]) }).await.unwrap();
        assert_eq!(*d, vec![4], "a first page always reads afresh");
        tokio::time::advance(MAX_AGE).await;
        let e = slot.get("q", false, async { Ok(vec![5]) }).await.unwrap();
        assert_eq!(*e, vec![5], "an old listing is not reused");
    }
}
