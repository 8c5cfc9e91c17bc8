"""The home: devices and areas the board knows, from config, home.d files and agents."""
