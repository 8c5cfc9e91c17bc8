"""One module per transport: raw zmq, mosquitto+paho, loomd over its socket, in process."""
