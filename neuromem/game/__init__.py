"""The memory game: studies, sequences, the web app and its database, scoring of human responses,
comparisons of conditions, simulated participants."""
