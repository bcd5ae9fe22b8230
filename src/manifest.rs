//! Manifest reading.
