//! # sam-net: the network driver (DESIGN sections 7 and 8)
#![deny(missing_docs)]
