"""ml-api's Lambda-side code: one module per concern, shipped with app.py."""
