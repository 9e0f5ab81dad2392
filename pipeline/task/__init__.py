"""Task networks (classifiers) and the DANN domain-adversarial baseline."""
