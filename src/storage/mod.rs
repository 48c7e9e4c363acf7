//! Storage: the redb tables and the record codec.

pub(crate) mod codec;
pub(crate) mod tables;
