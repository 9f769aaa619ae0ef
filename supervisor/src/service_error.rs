use std::error::Error;
use std::fmt;
use std::sync::Arc;

/// A boxed error, what services and sessions return when they fail.
pub type BoxError = Box<dyn Error + Send + Sync + 'static>;

/// The error a service or session failed with, shared so that status snapshots can be cloned.
///
/// It keeps the original error: [`ServiceError::downcast_ref`] recovers its type and
/// [`Error::source`] walks its sources. Two `ServiceError`s are equal when their messages are.
#[derive(Clone)]
pub struct ServiceError(Arc<dyn Error + Send + Sync + 'static>);

impl ServiceError {
    /// Wraps an error.
    pub fn new(error: impl Into<BoxError>) -> Self {
        ServiceError(Arc::from(error.into()))
    }

    /// The original error.
    pub fn get(&self) -> &(dyn Error + Send + Sync + 'static) {
        &*self.0
    }

    /// The original error as `T`, when it is one.
    pub fn downcast_ref<T: Error + 'static>(&self) -> Option<&T> {
        self.0.downcast_ref::<T>()
    }
}

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

impl fmt::Debug for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl Error for ServiceError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.0.source()
    }
}

impl PartialEq for ServiceError {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0.to_string() == other.0.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn keeps_type_and_sources() {
        let e = ServiceError::new(Outer(std::io::Error::other("inner")));
        assert_eq!(e.to_string(), "outer");
        assert!(e.downcast_ref::<Outer>().is_some());
        assert_eq!(e.source().unwrap().to_string(), "inner");
        assert_eq!(e, ServiceError::new("outer"));
        assert_ne!(e, ServiceError::new("other"));
    }
}
