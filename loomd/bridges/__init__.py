"""Bridges: MQTT (`loomd.bridges.mqtt`) and loomd-to-loomd peer links (`loomd.bridges.peers`).

Only light modules at import time: paho-mqtt is imported in `start()`.
"""
