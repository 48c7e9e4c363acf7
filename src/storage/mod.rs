//! Storage: the redb tables, the record codec, and the journal in front of redb.

pub(crate) mod codec;
pub(crate) mod journal;
pub(crate) mod tables;
