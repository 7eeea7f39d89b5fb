"""The memory game: continuous-recognition studies (the LaMem protocol), served as a web app
with a database, scored into human memorability, compared across conditions, simulated."""
