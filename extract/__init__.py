"""ksr.extract"""
