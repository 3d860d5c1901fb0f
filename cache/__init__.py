"""ksr.cache"""
