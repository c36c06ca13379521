"""Generation written once for both backends: beam-search spec, sampling, chat, output files."""
