"""Produces one record with kafka-python, a Kafka client outside the crate.

usage: produce.py HOST:PORT TOPIC KEY VALUE

The default partitioner (murmur2 on the key) picks the partition; prints
"PARTITION OFFSET" of the acknowledged record.
"""
import sys

from kafka import KafkaProducer

addr, topic, key, value = sys.argv[1:5]
producer = KafkaProducer(bootstrap_servers=addr, acks=1, linger_ms=0)
meta = producer.send(topic, key=key.encode(), value=value.encode()).get(timeout=20)
producer.flush()
producer.close()
print(meta.partition, meta.offset)
