"""maskgit_lab: an experiment suite for MaskGIT (masked generative image transformers).

Importing the package changes nothing outside it; the commands set up their process with
``maskgit_lab.process.configure``."""
