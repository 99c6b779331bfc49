"""Flower app for the fedrun MNIST benchmark."""
