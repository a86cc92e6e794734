//! The content store as the engine's image resolver.

use fleet_protocol::{Digest, ImageRef};

use super::ContentStore;
use crate::fleet::ports::{ImageResolver, PortError};

/// Tags resolved in the server's own content store; references that carry a
/// digest resolve to it.
pub struct ContentResolver(ContentStore);

impl ContentResolver {
    pub fn new(store: ContentStore) -> Self {
        Self(store)
    }
}

#[async_trait::async_trait]
impl ImageResolver for ContentResolver {
    async fn resolve(&self, image: &ImageRef) -> Result<Digest, PortError> {
        if let Some(digest) = image.digest() {
            return Ok(digest.clone());
        }
        let tag = image.tag().unwrap_or("latest");
        self.0
            .resolve(image.repository(), tag)
            .ok_or_else(|| PortError::NotImported {
                repository: image.repository().to_owned(),
                tag: tag.to_owned(),
            })
    }
}
