//! Guest introspection: page-table walks and Linux task identity through a pushed kernel profile.
#![no_std]
