"""Drafting: the tokens a speculative step verifies. The Medusa heads (`heads.py`, their checkpoint format in
`checkpoint.py`) draft from the last hidden state; context lookup (`lookup.py`) drafts what followed an n-gram
the text already holds."""
