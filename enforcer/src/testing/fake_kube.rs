//! A stateful fake Kubernetes API server.
