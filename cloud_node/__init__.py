"""The cloud node: the target model behind a pyzmq ROUTER socket (`python -m cloud_node`)."""
