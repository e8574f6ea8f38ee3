"""The commands around the loop: replay, classify, topics, labels, the demo and a dev broker."""
