"""The world the built-in tasks are about: its facts (`tables`: countries, capitals, names, places, objects) and
the builder of the toy world (`toyworld`), a small model trained on those facts and committed in models/toyworld/."""
