"""What a request means, one package per concern, imports pointing one way (tests/test_layout.py checks it):

http → tasks → generation → billing → accounts → the contract (schemas, samplers, settings, jobs, services) → loaders.
Nothing here knows about Modal or the CLI (functions/ does); a type needed only in annotations is imported under
TYPE_CHECKING.
"""
